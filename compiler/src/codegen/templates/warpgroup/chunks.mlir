{{pass_head}}
            nvvm.cp.async.wait.group {{left}}
            nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}
            gpu.barrier
            %cAH = arith.constant {{ahead}} : index
            %gn = arith.addi %gi, %cAH : index
            %more = arith.cmpi ult, %gn, %total : index
{{multiply}}
            scf.if %more {
{{issue}}
            }
            nvvm.cp.async.commit.group
            nvvm.wgmma.wait.group.sync.aligned 0
            scf.yield %next : {{acc}}
          }
{{pass_tail}}
