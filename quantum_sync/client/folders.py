"""Several folders in one client daemon (``--config``): one service per folder.

Each folder has its own state, engine, server connection and timers, so one folder's
server being down or its disk being full never stalls another.
"""

from twisted.application.service import MultiService

from quantum_sync.client.service import SyncClientService


class FoldersService(MultiService):
    """A :class:`~quantum_sync.client.service.SyncClientService` per configured folder,
    each named by its folder's name."""

    def __init__(self, folders, reactor):
        super().__init__()
        self.folders = {}
        for folder in folders:
            service = SyncClientService(folder.client, reactor)
            service.setName(folder.name)
            service.setServiceParent(self)
            self.folders[folder.name] = service
