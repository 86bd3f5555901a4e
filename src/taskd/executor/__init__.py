"""The executor daemon, ``taskd run``: the components that run the queue.

:mod:`~taskd.executor.daemon` only wires them together in one task group. Each component is one
class in its own module with one ``async def run()``: the :class:`Producer` (one per queue:
claims), the :class:`Runner` (runs handlers, builds every outcome), the :class:`Completer`
(writes outcomes in batches), the :class:`Heartbeat`, the :class:`Rescuer`, the
:class:`Notifier` (LISTEN wake-ups) and the :class:`StatsCollector` (queue statistics). Their
small helpers: the worker pool, the running set, capacities, the claim gate and wake-ups.
"""
