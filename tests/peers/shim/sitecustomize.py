"""Put on PYTHONPATH by the peer-suite adapters (tests/peers/), for every process they start:
their worker processes and the scripts CPython's tests run with `assert_python_ok`.

- `from concurrent.futures import BatchcrewExecutor` works, as the tests' scripts import their
  executor by name from there (loaded only when asked for);
- `import test.test_concurrent_futures` finds the suite where Debian's libpython3.11-testsuite
  put it (its functions and classes travel to the workers by reference).
"""

import os

_SUITE = os.environ.get("BATCHCREW_CPYTHON_TESTS", "/usr/lib/python3.11/test")


def _extend_test_package() -> None:
    try:
        import test
    except ImportError:
        return
    if os.path.isdir(_SUITE) and _SUITE not in test.__path__:
        test.__path__.append(_SUITE)


def _name_the_executor() -> None:
    import concurrent.futures

    lazy = concurrent.futures.__getattr__

    def __getattr__(name: str) -> object:
        if name == "BatchcrewExecutor":
            from batchcrew_futures import BatchcrewExecutor

            return BatchcrewExecutor
        return lazy(name)

    concurrent.futures.__getattr__ = __getattr__


_extend_test_package()
_name_the_executor()
