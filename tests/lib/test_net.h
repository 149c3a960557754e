/* Small helpers that several tests share. */
#ifndef TEST_NET_H
#define TEST_NET_H

/* A loopback TCP port that was free a moment ago, or -1. */
int test_free_port(void);

#endif
