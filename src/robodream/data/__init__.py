"""Robot datasets: reading and writing LeRobotDataset v3.0 (see :mod:`robodream.data.lerobot`)."""
