"""MediaMath's quota over time: the `mediamath_quota` asset's observations (S2S-QUOTA)."""
