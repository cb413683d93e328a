"""asyncio adapters: the only code touching sockets, clocks and tasks."""
