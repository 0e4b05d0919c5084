"""Webhooks per the Standard Webhooks spec: signing (``signing``), the SSRF guard on targets (``targets``), the outbox
written with a job's final status (``outbox``) and the dispatcher that delivers it from the workers (``dispatch``)."""
