# The C module's interface (src/pacslb/proxy/_pdufast.c), for mypy.

STOP_DRY: int
STOP_EOF: int
STOP_HEADER: int
STOP_LIMIT: int
PEEK: int
CHUNK: int

def relay(src_fd: int, pipe_w: int, need: int, limit: int, /) -> tuple[int, int, int, int]: ...
