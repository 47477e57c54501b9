// The plain link loop of `examples/scale_bench` (per store: mkdir, fsync of
// the parent, 100 linkat, fsync of the dir) in T threads, each taking every
// T-th store: what this machine allows the component's linker threads.
// Not part of the build. BENCHMARKS.md quotes it; run it on the bench's disk:
//
//   gcc -O2 -pthread -o /tmp/linkloop benches/linkloop.c
//   /tmp/linkloop /tmp/ll setup
//   n=0; for t in "1 0" "1 1" "2 1" "4 1"; do n=$((n+1)); /tmp/linkloop /tmp/ll run $t run$n; done
//   rm -rf /tmp/ll
//
// Arguments of run: THREADS DURABLE TAG. DURABLE 0: no fsync; 1: the
// fsyncs of the links; 2: those plus the component's round manifest (a
// 9,500-byte temp file, written, fsynced and renamed into place before the
// dir fsync: the one more fsync a round makes). Prints files/s per run;
// compare each with the 1-thread run of the same DURABLE. The round's own
// protocol, after setup:
//   n=0; for t in "1 1" "1 2" "2 2" "4 2"; do n=$((n+1)); /tmp/linkloop /tmp/ll run $t r$n; done
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static int STORES = 1024, FILES = 100, T;
static int durable;
static char manifest[9500];
static char src[4096], dst[4096];
static void die(const char *m) { perror(m); exit(1); }
static void *work(void *arg) {
  long t = (long)arg;
  char p[8192], q[8192];
  int root = open(dst, O_RDONLY | O_DIRECTORY);
  if (root < 0) die("open root");
  for (int kv = t; kv < STORES; kv += T) {
    snprintf(p, sizeof p, "%s/%d", dst, kv);
    if (mkdir(p, 0755)) die("mkdir");
    if (durable && fsync(root)) die("fsync root");
    for (int i = 0; i < FILES; i++) {
      snprintf(p, sizeof p, "%s/%d/%06d.sst", src, kv, i);
      snprintf(q, sizeof q, "%s/%d/%06d.sst", dst, kv, i);
      if (linkat(AT_FDCWD, p, AT_FDCWD, q, 0)) die("linkat");
    }
    if (durable == 2) {
      snprintf(p, sizeof p, "%s/%d/.tmp.round.1.json", dst, kv);
      snprintf(q, sizeof q, "%s/%d/round.1.json", dst, kv);
      int m = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (m < 0 || write(m, manifest, sizeof manifest) != sizeof manifest || fsync(m)) die("manifest");
      close(m);
      if (renameat2(AT_FDCWD, p, AT_FDCWD, q, RENAME_NOREPLACE)) die("rename manifest");
    }
    if (durable) {
      snprintf(p, sizeof p, "%s/%d", dst, kv);
      int d = open(p, O_RDONLY | O_DIRECTORY);
      if (d < 0 || fsync(d)) die("fsync dir");
      close(d);
    }
  }
  close(root);
  return 0;
}
int main(int argc, char **argv) {
  if (argc < 3 || (strcmp(argv[2], "setup") && argc < 6)) { fprintf(stderr, "usage: linkloop ROOT setup|run THREADS DURABLE TAG\n"); return 2; }
  snprintf(src, sizeof src, "%s/src", argv[1]);
  if (!strcmp(argv[2], "setup")) {
    mkdir(argv[1], 0755); mkdir(src, 0755);
    char p[8192]; char buf[328]; memset(buf, 'x', sizeof buf);
    for (int kv = 0; kv < STORES; kv++) {
      snprintf(p, sizeof p, "%s/%d", src, kv); mkdir(p, 0755);
      for (int i = 0; i < FILES; i++) {
        snprintf(p, sizeof p, "%s/%d/%06d.sst", src, kv, i);
        int f = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (f < 0 || write(f, buf, sizeof buf) != sizeof buf) die("setup");
        close(f);
      }
    }
    sync();
    return 0;
  }
  T = atoi(argv[3]); durable = atoi(argv[4]);
  memset(manifest, 'j', sizeof manifest);
  snprintf(dst, sizeof dst, "%s/dst-%s", argv[1], argv[5]);
  if (mkdir(dst, 0755)) die("mkdir dst");
  sync();
  struct timespec a, b;
  pthread_t th[64];
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long t = 0; t < T; t++) pthread_create(&th[t], 0, work, (void *)t);
  for (int t = 0; t < T; t++) pthread_join(th[t], 0);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
  printf("%s threads=%d durable=%d %.0f files/s\n", argv[5], T, durable, STORES * FILES / s);
  return 0;
}
