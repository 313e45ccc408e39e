"""The kopf operator (`cadml run`): thin wiring around the planner, the store and the API."""
