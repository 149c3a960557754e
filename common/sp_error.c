#include "sp_error.h"

const char *
sp_strerror(int code)
{
	switch (code) {
#define SP_ERR_TEXT(name, value, text) \
	case value:                    \
		return text;
		SP_ERRORS(SP_ERR_TEXT)
#undef SP_ERR_TEXT
	}
	return "unknown error";
}

const char *
sp_errname(int code)
{
	switch (code) {
#define SP_ERR_NAME(name, value, text) \
	case value:                    \
		return #name;
		SP_ERRORS(SP_ERR_NAME)
#undef SP_ERR_NAME
	}
	return "SP_E_UNKNOWN";
}
