"""Who gets in: password hashes, the TLS context, Basic-auth checks and the throttle
against bad peers. Sans-I/O where it can be: the transport supplies the clock and the
threads."""
