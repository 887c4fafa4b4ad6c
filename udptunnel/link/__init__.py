"""
The TCP side: the protocol that turns a connection into frames, and what a
connection goes through before its first frame (a PROXY header, TLS,
rfc1036's preamble), how a client reaches its server (through a proxy),
and how the ends of a connection are told in words.
"""
