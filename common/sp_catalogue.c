/* The catalogue tables, generated from common/defs/ *.def. */
#include "sp_frame.h"

static const sp_field_def field_defs[SP_F__COUNT] = {
#define SP_FIELD(name, key, type, min, max, max_count, rec) \
	[SP_F_##name] = {key, #name, SP_FT_##type, min, max, max_count, (int)SP_T_##rec},
#include "defs/fields_all.def"
#undef SP_FIELD
};

#define REQ true
#define OPT false
#define F(fld, req) {SP_F_##fld, req},
#define SP_FRAME(name, num, flags, serve, fields) \
	static const sp_field_spec spec_##name[] = {fields{SP_F__COUNT, false}};
#include "defs/frames_all.def"
#undef SP_FRAME

#define NOSERVE SP_TIER_NONE, SP_LOGIN_NO, SP_T_NONE
#define BY(tier, login, reply) SP_TIER_##tier, SP_LOGIN_##login, SP_T_##reply
#define SP_FRAME(name, num, flags, serve, fields)                                       \
	[num] = {#name, flags, (uint8_t)(sizeof(spec_##name) / sizeof(spec_##name[0]) - 1), \
		 spec_##name, serve},
static const sp_frame_def frame_defs[256] = {
#include "defs/frames_all.def"
};
#undef SP_FRAME
#undef BY
#undef NOSERVE

/* Compile-time guard: no frame declares more fields than a frame can hold. */
#define SP_FRAME(name, num, flags, serve, fields)                                          \
	_Static_assert(sizeof(spec_##name) / sizeof(spec_##name[0]) - 1 <= SP_FRAME_MAX_FIELDS, \
		       #name " has too many fields");
#include "defs/frames_all.def"
#undef SP_FRAME

const sp_frame_def *
sp_frame_def_get(unsigned type)
{
	if (type >= 256 || frame_defs[type].name == NULL)
		return NULL;
	return &frame_defs[type];
}

const sp_field_def *
sp_field_def_get(sp_field f)
{
	if ((unsigned)f >= SP_F__COUNT)
		return NULL;
	return &field_defs[f];
}

const char *
sp_frame_type_name(unsigned type)
{
	const sp_frame_def *d = sp_frame_def_get(type);
	return d ? d->name : "?";
}

bool
sp_frame_client_may_send(unsigned type, bool logged_in)
{
	const sp_frame_def *d = sp_frame_def_get(type);
	if (!d)
		return false;
	switch (d->login) {
	case SP_LOGIN_PRE:
		return !logged_in;
	case SP_LOGIN_ANY:
		return true;
	case SP_LOGIN_POST:
		return logged_in;
	case SP_LOGIN_NO:
		return false;
	}
	return false;
}
