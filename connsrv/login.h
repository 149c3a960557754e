/*
 * Login: HELLO -> CHALLENGE{nonce} -> AUTH{user, device, sig}, checked against the device's
 * auth key from keysrv (sp_login_verify), then the route claimed in Redis and an older
 * session of the device kicked. Handlers called by session.c's dispatch table with a frame
 * borrowed for the call. The keysrv and Redis answers run later on the loop, each holding
 * one of the session's server calls (cs_session_call_begin/_end); on success login.c hands
 * the session to session.c (cs_session_bind, cs_session_logged_in).
 */
#ifndef CS_LOGIN_H
#define CS_LOGIN_H

#include "connsrv/internal.h"

void cs_login_hello(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);
void cs_login_auth(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);

#endif
