"""The version written into infotexts.

It must not look like an A1111 release ("v1.x.y"): A1111 parses the Version key of
pasted infotexts and switches on old-behaviour flags for old versions.
"""
VERSION = "sdwebui-0.1.0"
