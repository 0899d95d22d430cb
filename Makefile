# Muscle memory only: every target is exactly one `cargo xtask` call. The tasks live in xtask/.
.PHONY: run dev down logs chat test deploy release rollback status doctor

run:
	cargo xtask dev
dev:
	cargo xtask dev --watch
down:
	cargo xtask dev --down
logs:
	cargo xtask logs --follow
chat:
	cargo xtask chat
test:
	cargo xtask ci
deploy:
	cargo xtask deploy --sha $(SHA)
release:
	cargo xtask release
rollback:
	cargo xtask rollback $(if $(SHA),--sha $(SHA))
status:
	cargo xtask status
doctor:
	cargo xtask doctor
