#!/bin/sh
# Deploys a rendered stack and follows the bot's rolling update until Swarm says how it ended;
# records the outcome as a one-server deploy does (`current`, deploys.log):
#   sh -c <this script> rollout.sh PROJECT SHA PREVIOUS ACTION WHO TIMEOUT
# Swarm updates one shard at a time, start-first: the new task stands by for its shard until it is
# healthy, then the old one is stopped and hands over. A task that never becomes healthy fails the
# update and Swarm rolls every shard back (failure_action: rollback). The last line says how it
# ended: `result ok`, `result rolled-back`, `result paused` or `result timeout`.
set -u
project=$1 sha=$2 previous=$3 action=$4 who=$5 timeout=$6
service=${project}_bot
dir=releases/$sha
image=$(sed -n 's/^BOT_IMAGE=//p' "$dir/release.env")
status() { docker service inspect --format "{{if .UpdateStatus}}$1{{end}}" "$service" 2>/dev/null; }
before=$(status '{{.UpdateStatus.StartedAt}}')
start=$(date +%s)
docker stack deploy --with-registry-auth --prune -c "$dir/stack.yml" "$project" || { echo "result failed"; exit 1; }
result=timeout
while [ $(( $(date +%s) - start )) -lt "$timeout" ]; do
  state=$(status '{{.UpdateStatus.State}}')
  started=$(status '{{.UpdateStatus.StartedAt}}')
  if [ "$started" != "$before" ]; then
    case $state in
      rollback_completed) result=rolled-back; break ;;
      paused|rollback_paused) result=paused; break ;;
    esac
  fi
  case $state in updating|rollback_started) sleep 2; continue ;; esac
  want=$(docker service inspect --format '{{.Spec.Mode.Replicated.Replicas}}' "$service")
  tasks=$(docker service ps --no-trunc --filter desired-state=running --format '{{.Image}} {{.CurrentState}}' "$service")
  running=$(printf '%s\n' "$tasks" | awk -v img="$image" '($1 == img || index($1, img "@") == 1) && $2 == "Running"' | wc -l)
  if [ "$running" -ge "$want" ] && [ "$(printf '%s\n' "$tasks" | grep -c .)" -eq "$want" ]; then
    result=ok; break
  fi
  sleep 2
done
secs=$(( $(date +%s) - start ))
spec=$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$service")
digest=-
case $spec in *@*) digest=${image%:*}@${spec#*@} ;; esac
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
case $result in
  ok)
    ln -sfn "$dir" current.new && mv -T current.new current
    echo "$now $action $sha $digest ok ${secs}s $who" >> deploys.log ;;
  rolled-back)
    echo "$now $action $sha - unhealthy ${secs}s $who" >> deploys.log
    if [ -n "$previous" ]; then echo "$now switch-back $previous $digest ok 0s $who" >> deploys.log; fi ;;
  *)
    echo "$now $action $sha - unhealthy ${secs}s $who" >> deploys.log ;;
esac
if [ "$result" != ok ]; then
  docker service ps --no-trunc --format '{{.Name}} {{.Image}} {{.CurrentState}} {{.Error}}' "$service" | head -n 12
fi
echo "result $result"
