/*
 * pam_rdsiam: test-only PAM module that hands (user, password) to the harness's token verifier
 * over a unix socket and succeeds iff the verifier answers "OK".
 *
 * Why not pam_exec: it truncates the password at 511 bytes, and IAM tokens signed with temporary
 * credentials are 1-2.5 KB. This module passes the whole token (PostgreSQL allows ~64 KB,
 * MariaDB's auth_pam_tool ~10 KB).
 *
 * Usage in /etc/pam.d/<service>:
 *   auth    required /abs/path/pam_rdsiam.so socket=/abs/path/verifier.sock
 *   account required pam_permit.so
 *
 * Wire: the module writes  user '\0' password,  shuts down its write side, and reads the reply
 * until EOF ("OK\n" or "DENY <reason>\n"). Any error denies. Under MariaDB this runs inside
 * auth_pam_tool (possibly setuid root), so it stays small and trusts nothing but the reply.
 *
 * Build: gcc -shared -fPIC -o pam_rdsiam.so pam_rdsiam.c -lpam   (Debian: libpam0g-dev)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include <security/pam_ext.h>
#include <security/pam_modules.h>

#define IO_TIMEOUT_SECONDS 10

/* Writes all of buf; send() with MSG_NOSIGNAL so a vanished verifier cannot SIGPIPE the host. */
static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Returns the argument value of "socket=..." or NULL. */
static const char *socket_arg(int argc, const char **argv) {
  for (int i = 0; i < argc; i++) {
    if (strncmp(argv[i], "socket=", 7) == 0 && argv[i][7] == '/') return argv[i] + 7;
  }
  return NULL;
}

static int ask_verifier(pam_handle_t *pamh, const char *path, const char *user, const char *token) {
  struct sockaddr_un addr;
  if (strlen(path) >= sizeof(addr.sun_path)) {
    pam_syslog(pamh, LOG_ERR, "socket path too long: %s", path);
    return -1;
  }
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  strcpy(addr.sun_path, path);

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  /* A hung verifier must fail the login, not hang the database backend forever. */
  struct timeval tv = {IO_TIMEOUT_SECONDS, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

  int ok = -1;
  if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
    pam_syslog(pamh, LOG_ERR, "connect %s: %s", path, strerror(errno));
    goto out;
  }
  if (write_all(fd, user, strlen(user) + 1) != 0 || write_all(fd, token, strlen(token)) != 0 ||
      shutdown(fd, SHUT_WR) != 0) {
    pam_syslog(pamh, LOG_ERR, "write to verifier: %s", strerror(errno));
    goto out;
  }
  char reply[256];
  size_t got = 0;
  for (;;) {
    if (got == sizeof(reply)) break; /* only the start of the reply matters */
    ssize_t n = recv(fd, reply + got, sizeof(reply) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      pam_syslog(pamh, LOG_ERR, "read from verifier: %s", strerror(errno));
      goto out;
    }
    if (n == 0) break;
    got += (size_t)n;
  }
  ok = (got >= 2 && reply[0] == 'O' && reply[1] == 'K') ? 0 : -1;
out:
  close(fd);
  return ok;
}

PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv) {
  (void)flags;
  const char *path = socket_arg(argc, argv);
  if (path == NULL) {
    pam_syslog(pamh, LOG_ERR, "missing module argument socket=/abs/path");
    return PAM_AUTH_ERR;
  }
  const char *user = NULL;
  if (pam_get_user(pamh, &user, NULL) != PAM_SUCCESS || user == NULL || *user == '\0') return PAM_AUTH_ERR;
  const char *token = NULL;
  if (pam_get_authtok(pamh, PAM_AUTHTOK, &token, NULL) != PAM_SUCCESS || token == NULL) return PAM_AUTH_ERR;
  return ask_verifier(pamh, path, user, token) == 0 ? PAM_SUCCESS : PAM_AUTH_ERR;
}

PAM_EXTERN int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc, const char **argv) {
  (void)pamh;
  (void)flags;
  (void)argc;
  (void)argv;
  return PAM_SUCCESS;
}
