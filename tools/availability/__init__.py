"""Availability measurements (issue 5): does a pin at factor k on nodes online a
fraction p of the time stay available with probability P_a = 1 - (1 - p)^k, and
by how much does repair beat it?

- ``sweep``: the simulator (``pinfold.replication.simulate``, the real planner on
  a simulated clock) across p x k, without and with repair, and the
  availability-target mode over many runs.
- ``churn``: real daemons on 127.0.0.1 killed (SIGKILL) and restarted on a seeded
  schedule, probed through a gateway node that holds none of the pins.
  Its pure model (``churn_model``), parameter and result records
  (``churn_records``) and process driver (``churn_driver``) are sibling modules.
- ``report``: ``make availability`` - runs both and writes tables (Markdown,
  CSV) and a plot (PNG) into ``results/availability/``.
"""
