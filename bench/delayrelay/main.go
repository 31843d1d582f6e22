// delayrelay: puts a server "far away" for the bench, where the kernel has no netem. A TCP relay
// that holds every chunk for -delay before writing it on (each direction, so the round trip grows
// by about twice -delay plus the sleep's lateness; the bench measures what it really is). Bounded
// queues keep backpressure. Prints "listening on ADDR" once bound.
package main

import (
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"syscall"
	"time"
)

type chunk struct {
	b  []byte
	at time.Time
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	upstream := flag.String("upstream", "", "server address (host:port)")
	delay := flag.Duration("delay", 250*time.Microsecond, "delay per chunk, each direction")
	flag.Parse()
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
		go func(c net.Conn) {
			s, err := net.Dial("tcp", *upstream)
			if err != nil {
				log.Print(err)
				c.Close()
				return
			}
			done := make(chan struct{}, 2)
			go pump(s, c, *delay, done)
			go pump(c, s, *delay, done)
			<-done
			<-done
			c.Close()
			s.Close()
		}(c)
	}
}

// pump copies src to dst, each chunk no earlier than `delay` after it was read. On EOF it
// half-closes dst; on an error it closes both. Signals `done` when nothing more will be written.
func pump(dst, src net.Conn, delay time.Duration, done chan<- struct{}) {
	defer func() { done <- struct{}{} }()
	q := make(chan chunk, 256)
	go func() {
		for {
			b := make([]byte, 32*1024)
			n, err := src.Read(b)
			if n > 0 {
				q <- chunk{b[:n], time.Now().Add(delay)}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					dst.Close()
				}
				close(q)
				return
			}
		}
	}()
	for c := range q {
		if w := time.Until(c.at); w > 0 {
			// time.Sleep wakes through epoll_wait's millisecond timeout (about 1.1 ms for any
			// shorter delay); nanosleep blocks this goroutine's thread for the delay itself.
			ts := syscall.NsecToTimespec(w.Nanoseconds())
			_ = syscall.Nanosleep(&ts, nil)
		}
		if _, err := dst.Write(c.b); err != nil {
			dst.Close()
			src.Close()
			for range q {
			}
			return
		}
	}
	if t, ok := dst.(*net.TCPConn); ok {
		t.CloseWrite()
	}
}
