"""
The fence: every use of Twisted's private API in udptunnel, and nothing
else.  It imports nothing of udptunnel's, so that what it depends on is
Twisted alone.

Each reach past the public API is checked once, on the installed Twisted,
against what it relies on; when a check fails (a release renamed an
attribute, added a buffer), one warning says what was missed and the
tunnel goes on through the public API: slower, never wrong.  Nothing here
acts at import.

  - L{writethrough}: write a link's frames straight to the socket when
    Twisted's buffers are empty (C{tcp.Connection}'s buffers and socket).
  - L{dispatch}: the epoll reactor's event dispatch without its per-event
    log context (its poller and selectables).
  - L{systemd}: the sockets systemd passed, as Twisted's C{systemd:}
    endpoint parser found them.
"""
