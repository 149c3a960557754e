/*
 * A real single-member etcd for tests: started on free loopback ports in a temporary data
 * dir, stopped by its PID (only the process this started), its dir removed.
 */
#ifndef ETCD_PROC_H
#define ETCD_PROC_H

#include <sys/types.h>

typedef struct etcd_proc {
	pid_t pid;
	int client_port, peer_port;
	char dir[128];
	char endpoint[64]; /* http://127.0.0.1:<client_port> */
} etcd_proc;

/* Starts etcd and waits (up to 15 s) until it serves. Returns 0, or -1 with a message on
 * stderr (no etcd binary, no port, no answer). */
int etcd_proc_start(etcd_proc *p);
/* Sends `sig` to the etcd process (SIGSTOP/SIGCONT for a stall). */
void etcd_proc_signal(etcd_proc *p, int sig);
/* SIGTERM, then SIGKILL after 5 s; waits for it and removes its data dir. */
void etcd_proc_stop(etcd_proc *p);

#endif
