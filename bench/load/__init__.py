"""The load study: the three services as processes on loopback, under concurrent clients and restarts."""
