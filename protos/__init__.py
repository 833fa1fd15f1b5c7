"""The `.proto` contracts of package specrej.v1, the command that compiles them (`python -m protos`)
and their buf checks (`python -m protos.contract`)."""
