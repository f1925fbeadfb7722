# Pure parsers of SLURM values (sourced by allocation.sh; no SLURM needed, so a dry run works anywhere):
#   expand_nodelist_bash LIST   hostlist -> one host per line (scontrol show hostnames is preferred when present)
#   first_ipv4 < words          the first IPv4 address, loopback excluded
#   gpus_per_node_from SPEC     SLURM_GPUS_PER_NODE ("4", "h100:4") -> the count
# Each returns 1 on input it cannot read.

expand_nodelist_bash() {  # SLURM hostlist ("node[01-04,07],gpu7") -> one host per line; no scontrol needed
    local list=$1 item="" depth=0 char i
    for ((i = 0; i < ${#list}; i++)); do  # split at the commas outside brackets
        char=${list:i:1}
        case "$char" in
            "[") depth=$((depth + 1)) ;;
            "]") depth=$((depth - 1)) ;;
        esac
        if [[ "$char" == "," && $depth -eq 0 ]]; then
            _expand_host_pattern "$item" || return 1
            item=""
        else
            item+=$char
        fi
    done
    [[ -z "$item" ]] || _expand_host_pattern "$item"
}

_expand_host_pattern() {  # one pattern, any number of [ranges] groups (expanded left to right)
    local pattern=$1
    if [[ "$pattern" != *"["* ]]; then
        [[ "$pattern" != *"]"* ]] || return 1
        printf '%s\n' "$pattern"
        return 0
    fi
    local prefix=${pattern%%"["*} rest=${pattern#*"["}
    local ranges=${rest%%"]"*} suffix=${rest#*"]"} part low high value
    [[ "$rest" == *"]"* ]] || return 1
    local IFS=,
    for part in $ranges; do
        if [[ "$part" =~ ^([0-9]+)-([0-9]+)$ ]]; then
            low=${BASH_REMATCH[1]} high=${BASH_REMATCH[2]}
            for ((value = 10#$low; value <= 10#$high; value++)); do  # the low end's width keeps zero padding
                _expand_host_pattern "$prefix$(printf '%0*d' "${#low}" "$value")$suffix" || return 1
            done
        elif [[ "$part" =~ ^[0-9]+$ ]]; then
            _expand_host_pattern "$prefix$part$suffix" || return 1
        else
            return 1
        fi
    done
}

first_ipv4() {  # the first IPv4 address among the words on stdin, loopback excluded (other nodes cannot reach it)
    local word
    while read -r word || [[ -n "$word" ]]; do  # the last word may lack a newline
        if [[ "$word" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ && "$word" != 127.* ]]; then
            printf '%s\n' "$word"
            return 0
        fi
    done < <(tr -s ' \t' '\n\n')
    return 1
}

gpus_per_node_from() {  # SLURM_GPUS_PER_NODE value ("4", "h100:4", "a100:2,v100:2") -> the count, else fail
    local spec=$1 total=0 item count
    local IFS=,
    for item in $spec; do
        count=${item##*:}
        [[ "$count" =~ ^[0-9]+$ ]] || return 1
        total=$((total + 10#$count))
    done
    printf '%s\n' "$total"
}
