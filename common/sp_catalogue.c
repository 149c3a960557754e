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
#define SP_FRAME(name, num, flags, fields) \
	static const sp_field_spec spec_##name[] = {fields{SP_F__COUNT, false}};
#include "defs/frames_all.def"
#undef SP_FRAME

#define SP_FRAME(name, num, flags, fields)                                              \
	[num] = {#name, flags, (uint8_t)(sizeof(spec_##name) / sizeof(spec_##name[0]) - 1), \
		 spec_##name},
static const sp_frame_def frame_defs[256] = {
#include "defs/frames_all.def"
};
#undef SP_FRAME

/* Compile-time guard: no frame declares more fields than a frame can hold. */
#define SP_FRAME(name, num, flags, fields)                                                 \
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
