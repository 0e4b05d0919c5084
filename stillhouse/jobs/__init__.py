"""The job life cycle, in one package: ``states`` (statuses and allowed transitions), ``leases`` (who runs a job),
``queue`` (the Celery broker configuration and sending), ``sweep`` (repairs what crashes leave), ``runner`` (claim,
run the core, publish), ``reporter`` (the core's ``Reporter`` on SQL), ``handback`` (graceful shutdown) and
``fs_transport`` (the embedded broker). The API creates and cancels jobs through it; the worker runs them through it."""
