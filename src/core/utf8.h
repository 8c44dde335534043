/*
 * UTF-8: the one validator, and what replies, updates and logs need of it.
 * proto3 strings must be valid UTF-8 (stock clients fail to parse a message
 * that holds anything else), and every client string that reaches a log line
 * is escaped, so no client can forge a line or drive a terminal.
 *
 * Valid means RFC 3629: no overlong forms, no surrogates (U+D800..U+DFFF),
 * nothing above U+10FFFF, no truncated sequence. NUL is a valid character.
 */
#ifndef DS_CORE_UTF8_H
#define DS_CORE_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* The length (1..4) of the valid sequence at S, which has AVAIL bytes, with
 * its code point in *CP if CP is not NULL; 0 if the bytes there are not one
 * (or AVAIL is 0). */
size_t utf8_decode(const char *s, size_t avail, uint32_t *cp);

/* Are the LEN bytes at S valid UTF-8? */
int utf8_valid(const char *s, size_t len);

/* The length of the longest prefix of S (LEN bytes) of at most MAX bytes
 * that does not cut a character in half: where a client string is cut. */
size_t utf8_prefix(const char *s, size_t len, size_t max);

/* S (LEN bytes) with every byte that is not part of a valid sequence
 * replaced by U+FFFD, NUL-terminated, to free(); NULL if S is valid. */
char *utf8_sanitize(const char *s, size_t len);

/* S (NUL-terminated) escaped for one log line, into BUF of SIZE bytes
 * (at least 8), which it returns: backslash, double quote, \n, \r, \t, other
 * control characters (C0, DEL, C1 as \u0080..\u009f, U+2028/U+2029) and
 * every byte that is not valid UTF-8 (\xHH) are escaped. The result is
 * valid UTF-8; if it does not fit, it is cut between characters and ends
 * with "...". */
const char *utf8_escape(char *buf, size_t size, const char *s);

#endif
