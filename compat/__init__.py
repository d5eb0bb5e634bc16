"""tinker-cookbook 0.6.1's own training loops against the embedded server (``make compat``).

Each scenario runs real cookbook entry points in a fresh interpreter, once with the
official ``tinker`` 0.38 SDK and once with ``tinker_async`` installed as ``tinker``
(``tinker_async.install_as_tinker()``). See ``compat/README.md``.
"""
