/* Linked into the coverage build of the core only (tools/build_core.py
 * --coverage): lets a process that leaves through os._exit, which skips the
 * atexit handler where gcov writes its counts, write them first
 * (tools/cov/sitecustomize.py calls it). */
extern void __gcov_dump(void);

__attribute__((visibility("default"))) void fastalloc_gcov_dump(void) { __gcov_dump(); }
