"""A pool created 0600 by one uid cannot be attached by another."""

import os

from fastalloc_shm import FastallocError, FixedPool, attach

from . import requirements

NOBODY = 65534


@requirements.needs_root("to run the attacher as another uid (os.setuid)")
def test_another_uid_cannot_attach_a_0600_pool(pool_name):
    with FixedPool.create(pool_name, capacity=4):
        pid = os.fork()
        if pid == 0:  # child: become nobody, then try
            code = 3
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                attach(pool_name)
                code = 1
            except FastallocError as exc:
                code = 0 if "may not open" in str(exc) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
