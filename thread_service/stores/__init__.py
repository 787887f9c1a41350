"""The thread-service's store backends; `backend.open_store` picks one."""
