/* unity.c: the one translation unit of the _core extension.
 *
 * Each unit owns one mechanism and opens with the invariant it keeps (the
 * list, and the discipline all of them keep, are in core.h). They are
 * compiled together, in this order, so the hot paths inline across units and
 * every internal function stays static.
 */
#include "core.h"

#include "fault.c"
#include "errors.c"
#include "extents.c"
#include "liveness.c"
#include "lock.c"
#include "tokens.c"
#include "slots.c"
#include "codec.c"
#include "magazines.c"
#include "channels.c"
#include "recovery.c"
#include "statistics.c"
#include "operations.c"
#include "type.c"
#include "module.c"
