/*
 * A real single-member etcd for tests: started on free loopback ports in a temporary data
 * dir, stopped by its PID (only the process this started), its dir removed. It gets SIGKILL
 * if the thread that started it dies (a test killed before its cleanup ran).
 */
#ifndef ETCD_PROC_H
#define ETCD_PROC_H

#include <sys/types.h>

typedef struct etcd_proc {
	pid_t pid;
	int client_port, peer_port;
	char dir[128];
	char host[48];     /* the address it listens on (127.0.0.1 unless started on another) */
	char endpoint[80]; /* http://<host>:<client_port> */
} etcd_proc;

/* Starts etcd and waits (up to 15 s) until it serves. Returns 0, or -1 with a message on
 * stderr (no etcd binary, no port, no answer). */
int etcd_proc_start(etcd_proc *p);
/* The same, with the client and peer URLs on `host` (an IPv4 address of the network
 * namespace the caller runs in, e.g. inside a test's own namespace); the ports are picked
 * free in that namespace. */
int etcd_proc_start_on(etcd_proc *p, const char *host);
/* SIGKILLs etcd (if running), then starts it again at once on the same data dir, host and
 * ports, and waits (up to 15 s) until it serves. Returns 0, or -1 with a message on
 * stderr. *down_ms (if not NULL) gets the time from the kill until the new process
 * answered its first health check. */
int etcd_proc_restart(etcd_proc *p, long *down_ms);
/* Sends `sig` to the etcd process (SIGSTOP/SIGCONT for a stall). */
void etcd_proc_signal(etcd_proc *p, int sig);
/* SIGTERM, then SIGKILL after 5 s; waits for it and removes its data dir. */
void etcd_proc_stop(etcd_proc *p);

#endif
