"""Remediation: ``--remediate`` plans, backs up, applies, re-verifies and rolls back the documented fixes.

The flow, for each organization of the run (``runner.remediate``):

1. plan (`fixes`): every requirement that FAILED in this run and is in the selection and
   whose catalog row names a fix becomes one or more `model.Change`s, computed from the
   facts the audit collected. A requirement that errored (no data) is never planned.
2. record (`model.RecordFile`): the plan is written to
   ``reports/<profile>-<UTC timestamp>-remediation.json`` before anything is changed, and
   rewritten atomically after every step, so the value before each change is on disk
   before the change is made.
3. apply (`exchange`, `graph`): each change re-reads its object, refuses to write when the
   object changed since the plan (someone else's change is never overwritten), writes,
   and reads back. Exchange only ever receives ``add_cmdlet``/``add_parameter``; Graph
   lists are merged (existing + missing), never replaced by what the plan thought.
4. re-verify (`judge`): the organization is collected again and each fixed requirement's
   own test function judges its subject afresh: ``fixed`` or still ``failed``.

``--rollback FILE`` (`rollback`) undoes the applied changes of a record, newest first.
Without ``--remediate`` or ``--rollback`` nothing in this package writes anywhere.
"""
