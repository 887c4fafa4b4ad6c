"""
The sockets systemd passed this process (socket activation), as Twisted's
C{systemd:} endpoint parser found them.
"""

from __future__ import annotations


def inheritedSockets() -> list[tuple[int, str | None]]:
    """
    The sockets systemd passed this process, as C{(descriptor, name)} pairs
    in their order (the first is descriptor 3), exactly as Twisted's
    C{systemd:} server endpoint sees them, so that C{--tcp systemd:...} and
    C{--udp systemd:...} index the same list.

    Twisted reads C{LISTEN_FDS} once, when C{twisted.internet.endpoints} is
    imported, and deletes it from the environment: so this asks the
    L{ListenFDs} that Twisted's C{systemd:} endpoint parser keeps
    (C{_SystemdParser._sddaemon}, private), and the environment only when a
    Twisted release moved it.  A name is C{None} where Twisted keeps none
    per descriptor (it keeps them in C{_names}; its public mapping by name
    loses all but one of the sockets of a C{.socket} unit, which share the
    unit's name).
    """
    from twisted.internet import endpoints
    from twisted.python.systemd import ListenFDs

    listen = getattr(getattr(endpoints, "_SystemdParser", None), "_sddaemon", None)
    if not isinstance(listen, ListenFDs):
        listen = ListenFDs.fromEnvironment()
    descriptors = listen.inheritedDescriptors()
    names = getattr(listen, "_names", None)
    if not isinstance(names, (list, tuple)) or len(names) != len(descriptors):
        byDescriptor = {fd: name for name, fd in listen.inheritedNamedDescriptors().items()}
        names = [byDescriptor.get(fd) for fd in descriptors]
    return list(zip(descriptors, names))


