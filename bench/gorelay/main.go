// gorelay: the data path of the Go sidecars (cloud-sql-proxy, rds-auth-proxy) for the bench, in
// the standard library only. Plaintext PostgreSQL in; an SSLRequest or GSSENCRequest from the
// client is answered 'N'. Out: SSLRequest, then verify-full TLS (RootCAs from -ca, ServerName =
// -servername), the client's startup message, then io.Copy both ways. It does no login of its
// own: the client authenticates to the server through it (password or trust).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"flag"
	"io"
	"log"
	"net"
	"os"
)

const (
	sslRequest    = 80877103 // SSLRequest code, protocol-flow.html#PROTOCOL-FLOW-SSL
	gssencRequest = 80877104 // GSSENCRequest code
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	upstream := flag.String("upstream", "", "server address to dial (host:port)")
	serverName := flag.String("servername", "", "name the server certificate must carry")
	caFile := flag.String("ca", "", "PEM file of the CA(s) to trust")
	flag.Parse()
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		log.Fatalf("no certificate in %s", *caFile)
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: *serverName, MinVersion: tls.VersionTLS12}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("listening on %s", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c, cfg, *upstream)
	}
}

// readMessage reads one length-prefixed untyped message (SSLRequest, StartupMessage).
func readMessage(r io.Reader) ([]byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(head[:])
	if n < 8 || n > 10000 {
		return nil, io.ErrUnexpectedEOF
	}
	m := make([]byte, n)
	copy(m, head[:])
	_, err := io.ReadFull(r, m[4:])
	return m, err
}

func serve(c net.Conn, cfg *tls.Config, upstream string) {
	defer c.Close()
	var startup []byte
	for startup == nil {
		m, err := readMessage(c)
		if err != nil {
			return
		}
		if code := binary.BigEndian.Uint32(m[4:8]); len(m) == 8 && (code == sslRequest || code == gssencRequest) {
			if _, err := c.Write([]byte{'N'}); err != nil {
				return
			}
			continue
		}
		startup = m
	}
	raw, err := net.Dial("tcp", upstream)
	if err != nil {
		log.Print(err)
		return
	}
	defer raw.Close()
	req := make([]byte, 8)
	binary.BigEndian.PutUint32(req, 8)
	binary.BigEndian.PutUint32(req[4:], sslRequest)
	var answer [1]byte
	if _, err := raw.Write(req); err != nil {
		return
	}
	if _, err := io.ReadFull(raw, answer[:]); err != nil || answer[0] != 'S' {
		log.Printf("server refused TLS (%q, %v)", answer[0], err)
		return
	}
	up := tls.Client(raw, cfg)
	if err := up.Handshake(); err != nil {
		log.Print(err)
		return
	}
	if _, err := up.Write(startup); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
}
