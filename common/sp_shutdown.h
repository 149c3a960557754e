/* A bound on a server's shutdown. Teardown can hang for good: NNG 1.5's nng_close() waits
 * on its reaper thread, which a task prepared but never started can block forever
 * (nanomsg/nng#1543, #1813; seen here closing the replication sockets of a copy stopped
 * under load). Everything a server acknowledged was durable before it answered, so ending
 * a teardown that hangs loses nothing: it is a SIGKILL at a calm moment. */
#ifndef SP_SHUTDOWN_H
#define SP_SHUTDOWN_H

/* The bound inboxsrv and keysrv use: a clean stop takes < 1.5 s, and this stays inside
 * devcluster.sh's 5 s (systemd's 30 s) before SIGKILL. */
#define SP_SHUTDOWN_MAX_MS 4000

/* Starts a detached thread that ends the process if it is still running `ms` after the
 * call: it logs once, then execv("/proc/self/exe", reexec_argv) when reexec_argv is not
 * NULL (the restart the shutdown was for), else _exit(code). Call it once, when shutdown
 * begins; reexec_argv must stay valid until the process ends. SP_OK, SP_EINVAL (ms <= 0
 * or a second call), or SP_ENOMEM (no thread). */
int sp_shutdown_bound(long ms, int code, char *const reexec_argv[]);

#endif
