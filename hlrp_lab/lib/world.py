"""Where this process stands in a torch.distributed job: its rank and the world's size, from torchrun's
environment (no torch: the spec layer and the simulator processes ask too)."""

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """This process's ranks: global ``rank`` of ``size``, ``local_rank`` of ``local_size`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes shared files (run directory, spec, CSV, graphs, Hub)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def launched(cls) -> "World":
        """The world torchrun (or a launcher setting its variables) started this process in."""
        env = os.environ
        return cls(
            rank=int(env.get("RANK", 0)),
            size=int(env.get("WORLD_SIZE", 1)),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            local_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
        )

    @classmethod
    def current(cls) -> "World":
        """The launched world once the process group is up; one process otherwise (a process that was not
        launched by torchrun, or that runs outside the group, e.g. a search trial or a test). Imports no torch:
        without torch.distributed loaded, no group is up."""
        dist = sys.modules.get("torch.distributed")
        up = dist is not None and dist.is_available() and dist.is_initialized()
        return cls.launched() if up else cls()
