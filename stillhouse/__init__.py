"""What the API (``app``) and the workers (``worker``) share: settings (``settings``), the database engine and sessions
(``db``), the tables (``models``), the artifact store (``storage``) and the job life cycle (``jobs``: states, leases,
the broker queue, the sweep, the runner, the SQL reporter and hand-back). It imports the distillation core
(``distill``) and never ``app`` or ``worker``."""
