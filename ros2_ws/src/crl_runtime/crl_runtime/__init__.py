"""crl goal-reaching policies on ROS 2: the goal_reach and sim_bridge nodes."""
