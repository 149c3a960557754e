#include <stdio.h>
#include <string.h>

#include "test_proc.h"

char
test_proc_state(const char *stat_path)
{
	char buf[512];
	FILE *f = fopen(stat_path, "r");
	if (!f)
		return '\0';
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *p = strrchr(buf, ')'); /* the state follows the command name */
	return p && p[1] == ' ' && p[2] ? p[2] : '?';
}
