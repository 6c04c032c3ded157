"""Data planes: the kernel engine (nftables) and the built-in proxy engine."""
