"""End-to-end fault and abuse tests: real router and sim processes on 127.0.0.1, raw sockets."""
