/* Skipped message-key lists shared by the Double Ratchet and Sender Keys. */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/internal.h"
#include "sp_error.h"

int
sig_skip_add(sig_skipped_key **arr, uint32_t *n, uint32_t *cap, uint32_t max, uint32_t counter,
    const uint8_t seed[32])
{
	if (*n >= max) {
		/* drop the oldest */
		sodium_memzero(&(*arr)[0], sizeof((*arr)[0]));
		memmove(*arr, *arr + 1, (size_t)(*n - 1) * sizeof(**arr));
		(*n)--;
	}
	if (*n == *cap) {
		uint32_t ncap = *cap ? *cap * 2 : 16;
		sig_skipped_key *na;

		if (ncap > max)
			ncap = max;
		na = calloc(ncap, sizeof(*na));
		if (na == NULL)
			return SP_ENOMEM;
		if (*arr != NULL) {
			memcpy(na, *arr, (size_t)*n * sizeof(*na));
			sodium_memzero(*arr, (size_t)*cap * sizeof(*na));
			free(*arr);
		}
		*arr = na;
		*cap = ncap;
	}
	(*arr)[*n].counter = counter;
	memcpy((*arr)[*n].seed, seed, 32);
	(*n)++;
	return SP_OK;
}

int
sig_skip_take(sig_skipped_key *arr, uint32_t *n, uint32_t counter, uint8_t seed[32])
{
	for (uint32_t i = 0; i < *n; i++) {
		if (arr[i].counter != counter)
			continue;
		memcpy(seed, arr[i].seed, 32);
		sodium_memzero(&arr[i], sizeof(arr[i]));
		memmove(arr + i, arr + i + 1, (size_t)(*n - i - 1) * sizeof(*arr));
		(*n)--;
		return SP_OK;
	}
	return SP_ENOTFOUND;
}

void
sig_skip_drop_oldest(sig_skipped_key *arr, uint32_t *n, uint32_t k)
{
	if (k > *n)
		k = *n;
	if (k == 0)
		return;
	sodium_memzero(arr, (size_t)k * sizeof(*arr));
	memmove(arr, arr + k, (size_t)(*n - k) * sizeof(*arr));
	*n -= k;
}

int
sig_skip_dup(sig_skipped_key **dst, uint32_t *dcap, const sig_skipped_key *src, uint32_t n)
{
	*dst = NULL;
	*dcap = 0;
	if (n == 0)
		return SP_OK;
	if ((*dst = malloc((size_t)n * sizeof(*src))) == NULL)
		return SP_ENOMEM;
	memcpy(*dst, src, (size_t)n * sizeof(*src));
	*dcap = n;
	return SP_OK;
}

void
sig_skip_free(sig_skipped_key **arr, uint32_t *n, uint32_t *cap)
{
	if (*arr != NULL) {
		sodium_memzero(*arr, (size_t)*cap * sizeof(**arr));
		free(*arr);
	}
	*arr = NULL;
	*n = *cap = 0;
}
