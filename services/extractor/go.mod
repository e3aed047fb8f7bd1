module github.com/attack-etl/attack-etl/services/extractor

go 1.26.0

require github.com/attack-etl/attack-etl/shared v0.0.0

replace github.com/attack-etl/attack-etl/shared => ../../shared
