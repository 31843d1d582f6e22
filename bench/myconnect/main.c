/*
 * pgbench -C -R for MySQL (bench/prewarm.ts): opens N connections 1000/RATE ms apart, each timed
 * from mysql_real_connect to logged in, runs `select 1`, closes it, and prints the mean connect
 * time in milliseconds. The password comes from MYCONNECT_PASSWORD (not argv, which ps shows).
 * With a CA file the connection uses TLS and checks the chain, not the name.
 */
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  if (argc != 8) {
    fprintf(stderr, "usage: MYCONNECT_PASSWORD=... myconnect ADDRESS PORT USER DATABASE CA_FILE|- N RATE\n");
    return 2;
  }
  const char *address = argv[1], *user = argv[3], *db = argv[4], *ca = argv[5];
  const char *password = getenv("MYCONNECT_PASSWORD");
  unsigned port = (unsigned)atoi(argv[2]);
  int n = atoi(argv[6]);
  double gap = 1000.0 / atof(argv[7]), sum = 0;
  for (int i = 0; i < n; i++) {
    double next = now_ms() + gap;
    MYSQL *m = mysql_init(NULL);
    if (strcmp(ca, "-") != 0) {
      my_bool off = 0;
      mysql_optionsv(m, MYSQL_OPT_SSL_CA, ca);
      mysql_optionsv(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &off);
    }
    double t0 = now_ms();
    if (!mysql_real_connect(m, address, user, password, db, port, NULL, 0)) {
      fprintf(stderr, "connect: %s\n", mysql_error(m));
      return 1;
    }
    sum += now_ms() - t0;
    if (mysql_query(m, "select 1") != 0) {
      fprintf(stderr, "query: %s\n", mysql_error(m));
      return 1;
    }
    mysql_free_result(mysql_store_result(m));
    mysql_close(m);
    double wait = next - now_ms();
    if (wait > 0) {
      struct timespec ts = {(time_t)(wait / 1000), (long)((wait - (long)(wait / 1000) * 1000) * 1e6)};
      nanosleep(&ts, NULL);
    }
  }
  printf("%.3f\n", sum / n);
  return 0;
}
