# Plots for bench/run.sh. Variables: latency, group (TSV files), outdir, stamp.
set terminal pngcairo size 900,560 font "sans,10"
set grid

set output sprintf("%s/%s-latency.png", outdir, stamp)
set title "Sealpost 1:1 latency vs offered rate (open loop, 2 connsrvs, durable SENT)"
set xlabel "offered rate (msgs/s)"
set ylabel "latency (ms)"
set logscale y
set key top left
plot latency using 1:2 with linespoints title "send -> recipient p50", \
     latency using 1:3 with linespoints title "send -> recipient p99", \
     latency using 1:4 with linespoints title "send -> recipient p99.9", \
     latency using 1:5 with linespoints title "send -> SENT p99"
unset logscale y

set output sprintf("%s/%s-group.png", outdir, stamp)
set title "Group messages: storage per message (per-shard body dedup)"
set xlabel "group size (members)"
set ylabel "bytes per group message"
set logscale x
set key top left
plot group using 1:2 with linespoints title "stored (shard map growth)", \
     group using 1:3 with linespoints title "bodies if stored per member"
