"""Sans-I/O decision and protocol cores: no asyncio, sockets, subprocesses or wall clock."""
