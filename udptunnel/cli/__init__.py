"""
From what the user wrote to what runs: addresses and endpoint
descriptions, the config file and its reload, the checks across tunnels,
and socket activation's sockets.
"""
