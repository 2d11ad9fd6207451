"""qaic_assets: calibrate and compile MLPerf models for Qualcomm Cloud AI 100 as Dagster assets."""
