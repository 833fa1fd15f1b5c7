"""The `.proto` contracts of package specrej.v1 and the command that compiles them."""
