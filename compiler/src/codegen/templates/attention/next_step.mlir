        gpu.barrier
        %stn = arith.addi %st, %c1 : index
        %more = arith.cmpi ult, %stn, %cSteps : index
        %stp = arith.select %more, %stn, %st : index
        %kn = arith.muli %stp, %cKeys : index
